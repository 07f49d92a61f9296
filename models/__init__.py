"""Models: Ontogeny's character GPT and the imported families (GPT-NeoX, LLaMA, OLMo-2,
Baichuan, GPT-2), one module each, written against one interface (`models.family`).

`models.apply(params, tokens, config, capture=...)` is the family-neutral forward pass
(`models.families.apply`); it dispatches on the config's family, registered in `models.families`.

Axis letters, used in array names across the project (`resid_CLBSD`, `H_CLQMD`):
    C checkpoints (the stacked series axis)   L layers          B batch
    S sequence positions                       D model width     F MLP width
    H heads                                    E head width      V vocabulary
    K classes, options or members              N examples        M contexts or samples
    Q questions, or moments q (NeuroMFA)       R radii (NeuroMFA)
A module that needs another letter says so in its docstring.

The packages form layers, each importing only those below it (tests/test_layering.py):
models <- dynamics <- probes <- experiments. `models.errors` holds `OntogenyError` and `require`
at the bottom, so every layer validates its input without importing upwards.
"""


def apply(params, tokens_BS, config, **kwargs):
    """Family-neutral forward pass: see `models.families.apply`."""
    from models.families import apply as _apply

    return _apply(params, tokens_BS, config, **kwargs)
