"""lorastudy."""
