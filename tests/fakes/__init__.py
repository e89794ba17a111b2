"""Stand-ins for what cannot exist here: ComfyUI on a GPU, Modal's control plane."""
