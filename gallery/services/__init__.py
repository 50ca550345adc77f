"""Writes of the gallery domain, one module per capability.

``prompts`` (prompt rows and prompt-file import), ``generators``, ``images`` (validated, content-addressed
registration and display derivatives), ``imports`` (gallery files and manifests), ``generation`` (jobs).
``prompt_ensure`` is re-exported because callers outside the app have used ``gallery.services.prompt_ensure``.
"""

from __future__ import annotations

from gallery.services.prompts import prompt_ensure

__all__ = ["prompt_ensure"]
