//! Image endpoints (being written; see issue 2).

use axum::Router;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}
