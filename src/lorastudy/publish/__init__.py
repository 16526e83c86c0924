"""Publishing: the Jupyter Book (`book`), its landing scorecard (`scorecard`), the committed snapshot of a
finished sweep (`snapshot`) and the headless browser check of its pages (`browser`)."""
