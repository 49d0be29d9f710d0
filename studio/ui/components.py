"""Gradio components the studio adjusts so that its API page tells the truth."""

from __future__ import annotations

import gradio as gr


class OpenDropdown(gr.Dropdown):
    """A dropdown that also takes values that are not among its choices (`allow_custom_value`).

    Gradio documents every dropdown's API parameter as `Literal[<choices when the page was built>]`,
    which is false for one that takes a folder, or a job id submitted later: this one is documented
    as a plain string. It renders as a normal dropdown.
    """

    is_template = True  # the page draws it with gr.Dropdown's frontend

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_custom_value=True, **kwargs)

    def api_info(self) -> dict:
        return {"type": "string"}

    def example_payload(self):
        return self.choices[0][1] if self.choices else ""

    def example_value(self):
        return self.example_payload()
