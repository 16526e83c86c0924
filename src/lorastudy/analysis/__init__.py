"""Analyses: one module per chapter of the book, `claims` (the one verdict type) and `selection` (which runs a
chapter compares). They return tables; figures live in `lorastudy.figures`."""
