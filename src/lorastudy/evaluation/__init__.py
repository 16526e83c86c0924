"""Scoring of model outputs: a sandbox for untrusted programs, pass@k, HumanEval and GSM8K scoring.

Submodules are imported on demand (`lorastudy.evaluation.code`, `.math`, `.passk`, `.sandbox`) so that
importing this package stays cheap and pulls in neither torch nor tqdm.
"""
