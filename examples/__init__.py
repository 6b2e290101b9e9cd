"""Examples: the FourierFT guide and the harness of the README's main job."""
