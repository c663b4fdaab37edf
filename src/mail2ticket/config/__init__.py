"""Configuration: schema (`model`, with the sections in `conversation`, `operations` and `rules`) and loading with
admin-readable errors (`load`)."""

from mail2ticket.config.load import ConfigError, config_path, load_config, reply_secret
from mail2ticket.config.model import Config, MailboxConfig, QueueConfig
from mail2ticket.config.rules import RuleConfig

__all__ = ["Config", "ConfigError", "MailboxConfig", "QueueConfig", "RuleConfig", "config_path", "load_config",
           "reply_secret"]
