//! Errors: [`ServeError`] (starting the server) and [`ApiError`] (one
//! response), mapped to HTTP once, here.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dspex::{Category, Error};
use serde::Serialize;
use utoipa::ToSchema;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration is invalid (the message names the key).
    #[error("configuration: {0}")]
    Config(String),
    /// DSPex did not start, or a configured program could not be created.
    #[error(transparent)]
    Dspex(#[from] Error),
    /// The address could not be bound, or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, for a program to act on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The category (`validation`, `overloaded`, `timeout`, `unavailable`,
    /// `worker_crashed`, `lm`, `python`, `not_found`, `unauthorized`, ...).
    pub category: String,
    /// A message a person can act on (never a key or a secret).
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// How long to wait before retrying, when known (also the
    /// `Retry-After` header, in whole seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    /// An error of the server's own (not from DSPex).
    pub fn new(status: StatusCode, category: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                category: category.to_owned(),
                message: message.into(),
                retryable: false,
                retry_after_ms: None,
            },
        }
    }

    /// `404`: no such program (or route).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `422`: the request is well-formed JSON but not acceptable.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's detail.
    pub fn detail(&self) -> &ErrorDetail {
        &self.detail
    }
}

/// The status of each category: the one table of the mapping.
pub(crate) fn status_of(category: Category) -> StatusCode {
    match category {
        Category::Validation => StatusCode::UNPROCESSABLE_ENTITY,
        Category::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Category::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Category::Unavailable | Category::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Category::WorkerCrashed | Category::Protocol | Category::Lm => StatusCode::BAD_GATEWAY,
        Category::Session => StatusCode::CONFLICT,
        Category::Budget | Category::Python | Category::Tool | Category::Configuration => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let category = error.category();
        let mut retry_after = error.suggested_delay();
        let status = status_of(category);
        if retry_after.is_none() && status == StatusCode::SERVICE_UNAVAILABLE {
            // A 503 always says when to come back.
            retry_after = Some(Duration::from_secs(1));
        }
        Self {
            status,
            detail: ErrorDetail {
                category: category.as_str().to_owned(),
                message: error.to_string(),
                retryable: error.is_retryable(),
                retry_after_ms: retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self
            .detail
            .retry_after_ms
            .map(|ms| ms.div_ceil(1000).max(1));
        let mut response = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_map_to_the_statuses_of_the_contract() {
        for (category, status) in [
            (Category::Validation, 422),
            (Category::Overloaded, 429),
            (Category::Timeout, 504),
            (Category::Unavailable, 503),
            (Category::WorkerCrashed, 502),
        ] {
            assert_eq!(status_of(category).as_u16(), status, "{category:?}");
        }
    }

    #[test]
    fn an_overload_says_when_to_retry() {
        let error = Error::Overloaded {
            message: "queue full".into(),
            retry_after: Duration::from_millis(1_500),
        };
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
