"""`deqflow build | infer | compare | bench`: the runtime's sub-commands (no torch at import)."""
