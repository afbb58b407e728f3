"""The model side: splitting into parts, chain cuts, profiling, device presets, the
reference models and the offline data.

Submodules are imported on use, so ``flsplit.model.presets`` stays free of torch.
"""
