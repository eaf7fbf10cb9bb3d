"""Everything `make demo` needs: demo data, the image demo's source backbone, a local `airflow standalone`.

Tooling, not the product: nothing in the service imports this package. `python -m tl_core.demo` runs the demo
(:mod:`tl_core.demo.run`).
"""
