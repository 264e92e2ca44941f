"""The host's topic registry: the scheduler package's, under the name the host's code imports."""

from agent.scheduler.registry import (
    CALL_TIMEOUT_SECONDS,
    MAX_PAYLOAD_CHARS,
    ONE_LINE,
    TOPIC_PATTERN,
    CallContext,
    ErrorCode,
    Handler,
    JsonChars,
    RegistryHandle,
    ServiceError,
    ServiceRegistry,
    TopicInput,
    describe,
    translate,
)

__all__ = [
    "CALL_TIMEOUT_SECONDS",
    "MAX_PAYLOAD_CHARS",
    "ONE_LINE",
    "TOPIC_PATTERN",
    "CallContext",
    "ErrorCode",
    "Handler",
    "JsonChars",
    "RegistryHandle",
    "ServiceError",
    "ServiceRegistry",
    "TopicInput",
    "describe",
    "translate",
]
