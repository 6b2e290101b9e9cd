"""`python -m examples.sentiment`: the README's main job."""

import sys

from examples.sentiment import startup

startup.request_jax_host_devices(sys.argv[1:])
with startup.without_tensorflow_load_lines():
    from examples.sentiment import harness

harness.main()
