use std::collections::HashMap;
use std::time::Duration;

use dspex::Signature;

#[derive(Signature)]
struct Bad {
    #[input]
    timeout: Duration,
    #[input]
    by_id: HashMap<u32, String>,
    #[output]
    answer: String,
}

fn main() {}
