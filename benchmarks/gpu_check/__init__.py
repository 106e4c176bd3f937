"""`make gpu-check`'s code: `schema` (the report), `pack` (what travels to the GPU machine), `run` (the check)."""
