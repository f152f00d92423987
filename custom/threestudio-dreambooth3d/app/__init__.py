"""``dreambooth3d app``: a web page for the whole pipeline (jobs: :mod:`.jobs`, Gradio-free; the page: :mod:`.ui`)."""
