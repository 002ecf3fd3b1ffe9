//! The code catalogue in `docs/protocol.md` must match the code: every error code and close
//! code appears with its number, name, HTTP status or reason, and reconnect advice.

use herald_protocol::{CloseCode, ErrorCode, PusherErrorCode, Reconnect};

fn protocol_doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md exists")
}

#[test]
fn every_error_code_is_documented() {
    let doc = protocol_doc();
    for code in ErrorCode::ALL {
        let row = format!(
            "| {} | `{}` | {} |",
            code.code(),
            code.name(),
            code.http_status()
        );
        assert!(doc.contains(&row), "docs/protocol.md lacks the row {row:?}");
    }
}

#[test]
fn every_close_code_is_documented() {
    let doc = protocol_doc();
    for code in CloseCode::ALL {
        let advice = match code.reconnect() {
            Reconnect::GiveUp => "give up",
            Reconnect::BackOff => "back off",
            Reconnect::Immediately => "reconnect now",
        };
        let row = format!("| {} | {} | {} |", code.code(), code.reason(), advice);
        assert!(doc.contains(&row), "docs/protocol.md lacks the row {row:?}");
    }
}

#[test]
fn every_pusher_only_code_is_documented() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/pusher-compatibility.md"
    );
    let doc = std::fs::read_to_string(path).expect("docs/pusher-compatibility.md exists");
    for code in PusherErrorCode::ALL {
        let row = format!("| {} | {} |", code.code(), code.description());
        assert!(
            doc.contains(&row),
            "docs/pusher-compatibility.md lacks the row {row:?}"
        );
    }
}
