use dspex::FieldValue;

#[derive(FieldValue)]
enum WithData {
    A(String),
    B,
}

#[derive(FieldValue, serde::Serialize)]
#[serde(rename_all = "shouting")]
enum BadRule {
    A,
}

#[derive(FieldValue)]
struct NotAnEnum;

fn main() {}
