"""The web app (``multidiffusion serve``): a local Gradio page over the public API.

Modules, from the bottom up, none of which reaches into the engine:

- ``limits``: the server's caps on canvas side, steps and uploads (``--max-side`` ...);
- ``models``: the fixed list of models the operator chose at start, loaded on demand;
- ``layout``: the Regions tab's values (colour map, colour table, boxes) as ``Region`` objects;
- ``settings``: a tab's form by API name, checked; ``from_png``: a PNG's stored settings back as form values;
- ``handlers``: what a button does: check, call ``MultiDiffusion``, write the PNG;
- ``context``, ``widgets``, ``panorama_tab``, ``regions_tab``, ``ui``: the Gradio page;
- ``server``: queue, limits and launch.

Only the page modules import Gradio, so the rest is testable without it.
"""

from multidiffusion.app.limits import ServerLimits
from multidiffusion.app.models import ModelPool

__all__ = ["ModelPool", "ServerLimits"]
