"""Model families, the decoding KV cache and the SDAR mapping (see :mod:`t3d_trl.models.families`)."""
