"""Gradio components the studio adjusts so that its API page tells the truth."""

from __future__ import annotations

import gradio as gr


class OpenDropdown(gr.Dropdown):
    """A dropdown created with `allow_custom_value=True`: it also takes values not among its choices.

    Gradio documents every dropdown's API parameter as `Literal[<choices when the page was built>]`,
    which is false for one that takes a folder, or a job id submitted later: this one is documented
    as a plain string. It renders as a normal dropdown. (No `__init__` of its own: Gradio sends the
    page the props named in the class's `__init__` signature.)
    """

    is_template = True  # the page draws it with gr.Dropdown's frontend

    def api_info(self) -> dict:
        return {"type": "string"} if self.allow_custom_value else super().api_info()

    def example_payload(self):
        return self.choices[0][1] if self.choices else ""

    def example_value(self):
        return self.example_payload()
