"""Models: Ontogeny's character GPT and the imported families (GPT-NeoX, LLaMA, GPT-2).

`models.apply(params, tokens, config, capture=...)` is the family-neutral forward pass
(`models.families.apply`); it dispatches on the family recorded in the config.
"""


def apply(params, tokens_BS, config, **kwargs):
    """Family-neutral forward pass: see `models.families.apply`."""
    from models.families import apply as _apply

    return _apply(params, tokens_BS, config, **kwargs)
