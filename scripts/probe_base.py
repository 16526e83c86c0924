"""Print what a profile's base knows (lorastudy.evaluation.probe): validation scores and single facts."""
from __future__ import annotations

import sys

from lorastudy.config import load_profile
from lorastudy.evaluation.probe import probe_base
from lorastudy.train.modeling import load_base

if __name__ == "__main__":
    profile = load_profile(sys.argv[1] if len(sys.argv) > 1 else "mini")
    model, tok = load_base(profile)
    print(probe_base(model, tok, profile).round(3).to_string(index=False))
