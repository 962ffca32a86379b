"""Service configuration: one typed root, read from a YAML file and ``DFSTREAM_*`` variables.

Every field states its bounds so that a bad value is refused at start-up with a message that
names the field, the value and what is allowed, rather than failing later inside a stream.
Nested fields are set from the environment with ``__``, e.g. ``DFSTREAM_REDIS__URL``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from engines import store
from engines.errors import UserError

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RedisSettings(Section):
    url: str | None = Field(
        None,
        description="redis://, rediss:// (TLS) or unix:// URL with optional AUTH; "
        "unset starts an embedded redis-server on a free loopback TCP port.",
    )
    prefix: str = Field("dfstream:", min_length=1, max_length=64, description="Key prefix.")
    events_maxlen: int = Field(
        100_000, ge=100, le=100_000_000, description="Approximate MAXLEN of the events Stream."
    )
    outbox_size: int = Field(
        10_000, ge=1, le=10_000_000, description="Events kept while Redis is unreachable."
    )
    evidence_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, le=365 * 24 * 3600, description="TTL of evidence JPEGs."
    )
    service_ttl_s: float = Field(
        10.0, ge=1.0, le=600.0, description="TTL of the liveness key; renewed at a third of it."
    )
    reconnect_base_s: float = Field(0.2, gt=0, le=60, description="First reconnect delay.")
    reconnect_cap_s: float = Field(10.0, gt=0, le=600, description="Longest reconnect delay.")
    socket_timeout_s: float = Field(
        5.0, gt=0, le=300, description="Connect and command timeout; longer counts as an outage."
    )
    state_interval_s: float = Field(
        0.1,
        ge=0,
        le=60,
        description="Least time between two writes of one stream's state hash; the latest "
        "values are always written (live scores are published for every frame regardless).",
    )

    @model_validator(mode="after")
    def _redis_cap_not_below_base(self) -> RedisSettings:
        if self.reconnect_cap_s < self.reconnect_base_s:
            raise ValueError(
                f"reconnect_cap_s ({self.reconnect_cap_s}) must not be below "
                f"reconnect_base_s ({self.reconnect_base_s})"
            )
        return self


class IngestSettings(Section):
    """How streams are opened, read, sampled and retried (stream/sources/)."""

    allowed_schemes: list[str] = Field(
        default_factory=lambda: ["rtsp", "rtsps", "rtmp", "rtmps", "http", "https"],
        description="URL schemes a stream may use. Add 'file' to read local files (it also "
        "admits plain paths); concat, subfile, data and pipe stay refused unless added too.",
    )
    network_deny: list[str] = Field(
        default_factory=list, description="CIDRs network sources must not connect to, beyond "
        "the defaults (link-local, cloud metadata, unspecified, multicast, broadcast).")
    network_allow: list[str] = Field(
        default_factory=list, description="CIDRs allowed even where a denial matches (e.g. a "
        "camera on a link-local address).")
    protocol_whitelist: list[str] = Field(
        default_factory=lambda: [
            "file", "http", "https", "tcp", "tls", "udp", "rtp", "rtsp", "rtsps",
            "rtmp", "rtmps", "crypto", "hls", "httpproxy",
        ],
        description="FFmpeg protocol_whitelist. 'file' is only honoured for local file sources; "
        "concat, subfile, data and pipe are refused unless listed here.",
    )
    formats: list[str] = Field(
        default_factory=lambda: [
            "mov", "mp4", "matroska", "webm", "mpegts", "flv", "live_flv", "rtsp", "hls",
            "h264", "hevc", "avi", "ivf", "mpeg", "mjpeg", "yuv4mpegpipe", "aac", "mp3",
        ],
        min_length=1,
        description="FFmpeg demuxers a stream may be read with (format_whitelist; aac and mp3 "
        "for HLS audio renditions); anything else, such as garbage probed as some obscure "
        "format, is refused.",
    )
    codecs: list[str] = Field(
        default_factory=lambda: [
            "h264", "hevc", "av1", "vp8", "vp9", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg",
            "h263", "rawvideo",
        ],
        min_length=1,
        description="Video codecs a stream may carry; others fail with a clear error.",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP lower transport.")
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout to open a stream.")
    read_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="Timeout of one read; for live HLS keep it above the segment duration.",
    )
    reconnect_base_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    reconnect_cap_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay.")
    watchdog_s: float = Field(
        10.0, gt=0, le=3600, description="No frame for this long restarts the reader."
    )
    analysis_fps: float = Field(
        5.0, gt=0, le=240, description="Frames per second handed to analysis per stream."
    )
    detect_max_side: int = Field(
        640, ge=64, le=4096, description="Longest side of the image given to face detection."
    )
    max_pixels: int = Field(
        8192 * 8192, ge=64 * 64, le=16384 * 16384, description="Larger frames are refused."
    )
    min_side: int = Field(16, ge=2, le=4096, description="Frames narrower or lower are refused.")
    decode_threads: int = Field(1, ge=0, le=64, description="FFmpeg decode threads; 0 = auto.")
    skip_nonref: bool = Field(
        True,
        description="Skip decoding non-reference frames when sampling far below the source rate.",
    )
    skip_gop_tail: bool = Field(
        True,
        description="H.264/HEVC without B-frames: do not decode the frames after the last "
        "sampled one of a GOP that a keyframe (IDR) closes; nothing kept depends on them.",
    )
    skip_min_ratio: float = Field(
        2.0, ge=1.0, le=100.0,
        description="Skipping starts only when the source rate is at least this many times "
        "the analysis fps.",
    )

    @field_validator("network_deny", "network_allow")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        import ipaddress

        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 or fe80::/10") \
                    from None
        return values

    @field_validator("allowed_schemes", "protocol_whitelist", "formats", "codecs")
    @classmethod
    def _plain_names(cls, names: list[str]) -> list[str]:
        cleaned = [name.strip().lower() for name in names]
        for name in cleaned:
            if not re.fullmatch(r"[a-z][a-z0-9_+.-]*", name):
                raise ValueError(f"{name!r} is not a plain lower-case name")
        return cleaned

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> IngestSettings:
        if self.reconnect_cap_s < self.reconnect_base_s:
            raise ValueError(
                f"reconnect_cap_s ({self.reconnect_cap_s}) must not be below "
                f"reconnect_base_s ({self.reconnect_base_s})"
            )
        return self


class FaceSettings(Section):
    detector: Literal["retinaface-mobilenet0.25", "retinaface-resnet50"] = Field(
        "retinaface-mobilenet0.25", description="Face detector weights."
    )
    confidence: float = Field(0.8, gt=0, lt=1, description="Minimum detection score.")
    nms_iou: float = Field(0.4, gt=0, lt=1, description="IoU above which boxes are merged.")
    min_face_px: int = Field(32, ge=8, le=4096, description="Smaller faces are ignored.")
    max_faces: int = Field(8, ge=1, le=256, description="At most this many faces per frame.")
    margin: float = Field(1.3, ge=1.0, le=3.0, description="Crop margin around the face.")
    min_landmark_score: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Below this detection score, or with landmarks outside the box, a plain "
        "box crop is used instead of the 5-point alignment.",
    )
    crop: Literal["fast", "reference"] = Field(
        "fast",
        description="'fast': a least-squares 5-point similarity warped straight to 224 (box crop "
        "when landmarks are unreliable); 'reference': the authors' crop (LMEDS fit, warp to "
        "256, antialiased bicubic to 224, no box fallback). Train and serve with the same one; "
        "docs/benchmarks.md measures the difference.",
    )
    track_iou: float = Field(0.3, gt=0, lt=1, description="IoU to continue a track.")
    track_min_hits: int = Field(2, ge=1, le=100, description="Hits before a track is confirmed.")
    track_max_age_s: float = Field(1.0, gt=0, le=60, description="Unmatched tracks expire after.")
    track_max_speed: float = Field(
        15.0,
        ge=0,
        le=1000,
        description="Where IoU with a track's predicted or last box fails, a face of similar "
        "size at most this many face sizes per second from either centre continues the track; "
        "0 matches by IoU only.",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="Detector runtime; 'auto': torch on CUDA, ONNX Runtime on CPU (faster there, "
        "see docs/benchmarks.md).",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Most frames per detector call.")
    weights: Path | None = Field(
        None,
        description="An explicit RetinaFace weights file instead of the model store's "
        "(its sha256 is logged; pin it with weights_sha256).",
    )
    weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="Required sha256 of `weights`."
    )

    @model_validator(mode="after")
    def _sha256_needs_weights(self) -> FaceSettings:
        if self.weights_sha256 is not None and self.weights is None:
            raise ValueError("weights_sha256 is set but weights (the file it checks) is not")
        return self


class DetectorSettings(Section):
    arch: Literal["ViT-L-14", "ViT-B-16", "tiny"] = Field("ViT-L-14", description="Backbone.")
    bundle: str | None = Field(
        None, description="Detector bundle (store name or path); unset: the best installed."
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt", "torch-compile"] = Field(
        "auto",
        description="Crop scorer backend; 'auto': on a GPU the fastest compiled engine that "
        "passed its accuracy gate (`dfstream engine build`), else TensorRT where it imports, "
        "else eager torch; on the CPU the faster of ONNX Runtime and torch, measured here.",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "fp16", "bf16", "fp8"] = Field(
        "auto",
        description="Compute precision; 'auto': bf16 on a GPU that has it (else fp16), fp32 on "
        "the CPU. 'fp8' (torch-compile only, compute capability >= 8.9 and torchao): FP8 "
        "transformer linears on bf16, after its accuracy gate.",
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(
        "reduce-overhead",
        description="torch.compile mode of the torch-compile backend ('reduce-overhead' and "
        "'max-autotune' capture one CUDA graph per batch bucket).",
    )
    compile_dynamic_batch: bool = Field(
        False,
        description="torch-compile: one graph with a symbolic batch size instead of one per "
        "bucket (much shorter compile; CUDA graphs stay per bucket).",
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Largest crop batch per call.")
    allow_untrained: bool = Field(
        False, description="Run with random weights (loudly flagged) when no bundle is installed."
    )

    @model_validator(mode="after")
    def _fp8_is_compiled(self) -> DetectorSettings:
        if self.precision == "fp8" and self.backend not in ("auto", "torch-compile"):
            raise ValueError(f"precision fp8 is the compiled engine's: set backend "
                             f"torch-compile (or auto), not {self.backend}")
        return self


class Thresholds(Section):
    rule: Literal["hysteresis", "cusum"] = Field(
        "hysteresis", description="'hysteresis': p_stream against enter/exit; 'cusum': a CUSUM "
        "of per-frame log-likelihood ratios per face track against cusum_h/cusum_exit.")
    enter: float = Field(0.8, ge=0, le=1, description="p_stream at or above this starts an alert.")
    exit: float = Field(0.6, ge=0, le=1, description="p_stream below this ends an alert.")
    cusum_prior: float = Field(
        0.5, gt=0, lt=1, description="cusum: the p_fake whose log-likelihood ratio is 0 (frames "
        "above it add evidence, frames below take it away).")
    cusum_h: float = Field(5.0, gt=0, le=1000, description="cusum: S_t at or above this alerts.")
    cusum_exit: float = Field(
        2.5, ge=0, le=1000, description="cusum: S_t below this (for hold_s) ends an alert.")
    min_duration_s: float = Field(1.0, ge=0, le=3600, description="Time above enter to alert.")
    hold_s: float = Field(2.0, ge=0, le=3600, description="Time below exit to clear.")
    cooldown_s: float = Field(5.0, ge=0, le=3600, description="Quiet time before a new alert.")
    window_s: float = Field(2.0, gt=0, le=600, description="Rolling window per face track.")

    @model_validator(mode="after")
    def _exit_not_above_enter(self) -> Thresholds:
        if self.exit > self.enter:
            raise ValueError(f"exit ({self.exit}) must not be above enter ({self.enter})")
        if self.cusum_exit > self.cusum_h:
            raise ValueError(f"cusum_exit ({self.cusum_exit}) must not be above cusum_h "
                             f"({self.cusum_h})")
        return self


class ScoringSettings(Section):
    thresholds: Thresholds = Field(default_factory=Thresholds)
    aggregate: Literal["mean", "median"] = Field("mean", description="Rolling aggregate.")
    update_interval_s: float = Field(
        1.0, ge=0, le=3600, description="Least time between alert.update events of one alert."
    )
    update_min_rise: float = Field(
        0.01,
        ge=0,
        le=1,
        description="alert.update needs the top score to rise by at least this much "
        "(or a new track to join the alert).",
    )
    heatmap: bool = Field(
        True,
        description="With each alert's evidence crop, store a heatmap of where the detector "
        "looks (a CPU torch copy of the detector, loaded at the first alert; docs/redis.md).",
    )


class PipelineSettings(Section):
    max_frames: int = Field(16, ge=1, le=1024, description="Frames per detection batch.")
    max_wait_ms: float = Field(
        20.0, ge=0, le=10_000,
        description="Longest wait for more frames after the first of a batch; only while the "
        "scorer is behind (otherwise a batch is whatever is ready).",
    )
    max_crops_per_stream: int = Field(
        8, ge=1, le=1024, description="Per-stream share of one scorer batch, for fairness."
    )


class IceServer(Section):
    """A STUN or TURN server offered to publishers (and used by the service's own ICE agent)."""

    urls: list[str] = Field(..., min_length=1, description="stun:, turn: or turns: URLs.")
    username: str | None = Field(None, description="TURN user name.")
    credential: SecretStr | None = Field(None, description="TURN password.")

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^(stun|stuns|turn|turns):[^\s]+$", url):
                raise ValueError(f"{url!r} is not a stun:, turn: or turns: URL")
        return urls


class WebRTCSettings(Section):
    """WebRTC ingest over WHIP (stream/webrtc/, docs/webrtc.md)."""

    enabled: bool = Field(True, description="Serve WHIP at POST /whip/{stream} on the API.")
    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="STUN/TURN servers; empty: host candidates only (no public STUN server "
        "is ever added on its own).",
    )
    host_addresses: list[str] = Field(
        default_factory=list,
        description="IP addresses offered as host candidates; empty: every address of the "
        "machine but loopback (the ICE library's default).",
    )
    session_timeout_s: float = Field(
        15.0, ge=1, le=3600,
        description="A session without a video frame this long (publisher gone, consent "
        "lapsed) ends, and its stream goes offline.",
    )
    max_sessions: int = Field(32, ge=1, le=10_000, description="Concurrent WHIP publishers.")
    decoder_threads: int = Field(
        1, ge=1, le=64, description="Decoder threads per WHIP stream (slice threads)."
    )
    publish_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Per-stream publish tokens (stream id -> token), accepted besides "
        "api.token on that stream's WHIP routes.",
    )

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return addresses


class ApiSettings(Section):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Bind port; 0 picks a free one.")
    token: SecretStr | None = Field(
        None, description="Bearer token; required when bound beyond loopback (printed as "
        "'**********')."
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024, description="Body cap.")


class StreamSpec(Section):
    id: str = Field(..., pattern=STREAM_ID_PATTERN, description="Stream id used in Redis keys.")
    url: str = Field(..., min_length=1, max_length=4096, description="Source URL or file path.")
    analysis_fps: float | None = Field(None, gt=0, le=240, description="Overrides ingest's.")
    watchdog_s: float | None = Field(None, gt=0, le=3600, description="Overrides ingest's.")
    realtime: bool = Field(True, description="Files: pace as live (True) or decode flat out.")
    loop: bool = Field(False, description="Files: start again at the end.")
    calibration: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="A per-stream "
        "calibration fitted on this camera's real footage (`dfstream calibrate-stream --name`); "
        "replaces the bundle's calibration for this stream.")

    @field_validator("url")
    @classmethod
    def _url_is_text(cls, url: str) -> str:
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "the URL holds a character that is not text (a lone surrogate); give it as "
                "UTF-8 text, with %-escapes where the URL needs them"
            ) from None
        return url


class Settings(BaseSettings):
    """The root of the configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DFSTREAM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    home: Path | None = Field(
        None, description="Model store; default: the user cache dir (or $DFSTREAM_HOME)."
    )
    weights_dir: Path | None = Field(
        None, description="Extra read-only directory searched for weights first."
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    faces: FaceSettings = Field(default_factory=FaceSettings)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    streams: list[StreamSpec] = Field(default_factory=list, description="Streams at start-up.")

    @field_validator("streams")
    @classmethod
    def _unique_stream_ids(cls, streams: list[StreamSpec]) -> list[StreamSpec]:
        seen: set[str] = set()
        for spec in streams:
            if spec.id in seen:
                raise ValueError(f"stream id {spec.id!r} appears twice")
            seen.add(spec.id)
        return streams

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then DFSTREAM_* variables, then the YAML file.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _yaml_file.get()
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


_yaml_file: ContextVar[Path | None] = ContextVar("dfstream_yaml_file", default=None)


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message names every bad field."""


def invalid_value(loc: Sequence[str | int], problem: str, shown: str) -> str:
    """One refused value as every command prints it: the field, what is wrong with it (and so
    what is allowed), and the value given."""
    field = ".".join(str(part) for part in loc) or "(root)"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{field}: {problem} (got {shown})"


def describe_validation_error(exc: ValidationError, what: str = "configuration") -> str:
    """A pydantic error as lines of :func:`invalid_value`, under a heading that says what was
    invalid."""
    lines = []
    for err in exc.errors():
        value = err.get("input")
        shown = "{...}" if isinstance(value, dict) else repr(value)
        lines.append(invalid_value(err["loc"], err["msg"], shown))
    return f"invalid {what}:\n  " + "\n  ".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (or $DFSTREAM_CONFIG), the environment and explicit overrides."""
    file = Path(path) if path is not None else None
    if file is None and os.environ.get("DFSTREAM_CONFIG"):
        file = Path(os.environ["DFSTREAM_CONFIG"])
    if file is not None:
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
    token = _yaml_file.set(file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    finally:
        _yaml_file.reset(token)


def configure_store(settings: Settings) -> None:
    """Point the model store at the configured locations (``home``, ``weights_dir``; from the
    config file or DFSTREAM_HOME / DFSTREAM_WEIGHTS_DIR). Unset ones fall back to the defaults,
    so each call fully replaces what an earlier one set."""
    store.configure(home=settings.home, weights_dir=settings.weights_dir)
