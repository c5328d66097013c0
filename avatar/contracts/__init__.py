"""The versioned API contract (v1), one module per resource: generate and check (`generate`), jobs and batches
(`jobs`), the account's resources (`accounts`), custom styles (`styles`) and the error shape (`errors`).
`from avatar.contracts import X` works for every model."""

from avatar.catalog.backgrounds import BACKGROUNDS
from avatar.catalog.palettes import PALETTES
from avatar.catalog.platforms import BUILTIN_STYLES, PLATFORMS, RESOLUTIONS
from avatar.catalog.styles import CUSTOM_INTENSITY as DEFAULT_CUSTOM_INTENSITY, DEFAULT_INTENSITY
from avatar.contracts.accounts import (REQUEST_ID_RE, AccountView, FeedbackRequest, FeedbackView, UsageExport,
                                       UsageRow, UsageSummary, WebhookSecret)
from avatar.contracts.errors import ErrorDetail, ErrorResponse, parse_request, validation_error
from avatar.contracts.generate import (API_VERSION, BACKGROUND_CHOICES, STYLE_TOKEN_RE, TRANSPARENT, AttemptSummary,
                                       CheckRequest, CheckResponse, FaceFound, GenerateRequest, GenerateResponse,
                                       HeadAngle, ValidationWarning, is_style_token)
from avatar.contracts.jobs import (JOB_STATES, WEBHOOK_EVENT_NAMES, BatchItem, BatchItemsList, BatchItemView,
                                   BatchOutput, BatchRequest, JobProgress, JobsList, JobView, JobWebhook,
                                   WebhookAttempt, WebhookDelivery, WebhookFields)
from avatar.contracts.styles import StyleJobRequest, StylesList, StyleView

__all__ = ["API_VERSION", "BACKGROUNDS", "BACKGROUND_CHOICES", "BUILTIN_STYLES", "DEFAULT_CUSTOM_INTENSITY",
           "DEFAULT_INTENSITY", "PLATFORMS", "JOB_STATES", "PALETTES", "REQUEST_ID_RE",
           "RESOLUTIONS", "STYLE_TOKEN_RE", "TRANSPARENT", "WEBHOOK_EVENT_NAMES", "AccountView", "AttemptSummary",
           "BatchItem", "BatchItemView", "BatchItemsList", "BatchOutput", "BatchRequest", "CheckRequest",
           "CheckResponse", "ErrorDetail", "ErrorResponse", "FaceFound", "FeedbackRequest", "FeedbackView",
           "GenerateRequest", "GenerateResponse", "HeadAngle", "JobProgress", "JobView", "JobWebhook", "JobsList",
           "StyleJobRequest", "StyleView", "StylesList", "UsageExport", "UsageRow", "UsageSummary",
           "ValidationWarning", "WebhookAttempt", "WebhookDelivery", "WebhookFields", "WebhookSecret",
           "is_style_token", "parse_request", "validation_error"]
