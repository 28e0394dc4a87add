"""JSON in and out of the server: strict on the way out, safe on the way in.

Out (HTTP answers and Socket.IO events): no NaN or infinity, which JSON does
not have and browsers cannot parse; a value that slips through is a
``ValueError`` where it is sent (a failing test), never a corrupt stream.

In (request bodies, pipelines, Socket.IO packets): every text a client can
send either parses or raises ``ValueError``. Python's parser also raises
``RecursionError`` for deep nesting (``[[[[...``), which would otherwise
escape as a server error; an integer of more than 4,300 digits is a
``ValueError`` too, reworded.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flask.json.provider import DefaultJSONProvider


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities."""
    kwargs["allow_nan"] = False
    return json.dumps(obj, **kwargs)


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` whose only error is ``ValueError``."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    except ValueError as error:
        if "integer string conversion" not in str(error):
            raise
        raise ValueError(
            f"a number in the JSON has more than {sys.get_int_max_str_digits()} digits"
        ) from None


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON (keys in the order given), through ``dumps`` and ``loads`` above."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs["allow_nan"] = False
        return super().dumps(obj, **kwargs)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)
