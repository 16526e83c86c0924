"""Data layer: record types, real-dataset adapters and the offline mini world."""
from lorastudy.data.records import CodeTask, InstructionPair, MathProblem, MCItem, Record, TextDoc

__all__ = ["CodeTask", "InstructionPair", "MathProblem", "MCItem", "Record", "TextDoc"]
