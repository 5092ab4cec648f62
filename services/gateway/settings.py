"""Settings of the gateway service: where the services of the request flow are (auth's address is in
every service's settings)."""

from pydantic import Field

from parapet.kit.config import ServiceSettings


class GatewaySettings(ServiceSettings):
    """The gateway calls every other service; `parapet up` sets these, Kubernetes uses service DNS names."""

    moderation_address: str | None = Field(None, description="host:port of the moderation service.")
    metering_address: str | None = Field(None, description="host:port of the metering service.")
    retrieval_address: str | None = Field(None, description="host:port of the retrieval service.")
    inference_address: str | None = Field(None, description="host:port of the inference service.")
    audit_address: str | None = Field(None, description="host:port of the audit service.")
