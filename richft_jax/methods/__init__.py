"""Methods as small functions plugged into the one train loop (loss terms, rates, updates)."""
