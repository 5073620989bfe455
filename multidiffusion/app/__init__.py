"""The web app (``multidiffusion serve``): a local Gradio page over the public API.

Modules, from the bottom up: ``limits`` (the server's caps on canvas, steps and uploads),
``models`` (the fixed list of models the operator chose at start, loaded on demand), ``settings``
(the page's fields by API name, PNG settings), ``handlers`` (what a button does: validate, call
``MultiDiffusion``, write the PNG), ``ui`` (the Gradio layout) and ``server`` (launch). Only
``ui`` and ``server`` import Gradio, so everything else is testable without it.
"""

from .limits import Limits
from .models import ModelPool

__all__ = ["Limits", "ModelPool"]
