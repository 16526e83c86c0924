"""Figures: the house style (`style`) and one module of figure functions per chapter."""
