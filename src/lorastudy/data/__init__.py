"""Data layer: record types, real-dataset adapters, the offline mini world and its tokenizer."""
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, Record, TextDoc

__all__ = ["CodeTask", "InstructionPair", "MathProblem", "MCItem", "Record", "TextDoc"]
