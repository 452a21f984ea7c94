//! The operator console (`/console`): server-rendered pages in zh-CN and en over the same state
//! as the API, and the analytics renderer that `tongban report` shares.

pub mod analytics;
pub mod labels;
