"""Analyses: one module per chapter of the book, `claims` (the one verdict type) and `selection` (which runs a
chapter compares), `chapter` (what a chapter notebook opens: its runs, claims and facts) and `summaries` (the
small tables a snapshot keeps). They return tables; figures live in `lorastudy.figures`."""
