"""The fault campaign: chaos under load, root death, fuzzed frames, bad input, slow consumers."""
