"""Everything that speaks ComfyUI: launch it, talk to its API, run one job end to end.

Used inside the Modal container and by `ryla serve`; knows nothing of Modal.
"""
