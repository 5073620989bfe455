"""The library's own files, read and written: settings files (scene files in TOML or JSON, the
settings a result stores: :mod:`.scene`) and PNG metadata with the saving of results
(:mod:`.metadata`).

Why a package of its own beside :mod:`multidiffusion.io`: ``io`` is the bottom of the package
(trust levels, budgets, bounded readers, the image loader, the ranges of values), which every
layer imports. Reading settings builds the tasks' options (:mod:`multidiffusion.options`), their
regions and the model families' options, all of which import ``io``; so the settings reader sits
one floor above the options, here, and imports only down (io, regions, models, conditionings,
options), never the engine's runner, the public class or the shells.
"""
