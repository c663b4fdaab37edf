"""Config section [conversation]: threading, staff replies and commands by mail, status workflow."""

from __future__ import annotations

from mail2ticket.config.base import Strict


class ConversationConfig(Strict):
    pass
