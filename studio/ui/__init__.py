"""The studio's Gradio app: one module per tab (`create_ui(ctx, shared)` with its events beside it).

`studio.ui.app.build_app` assembles the tabs; everything else in `studio/` is Gradio-free.
"""
