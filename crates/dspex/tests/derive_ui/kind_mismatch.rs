use dspex::Signature;

#[derive(Signature)]
struct Bad {
    #[input]
    question: String,
    #[output(kind = "probability")]
    certainty: String,
    #[output(kind = "embedding")]
    vector: Vec<String>,
    #[output(literal = "yes|no")]
    verdict: bool,
}

fn main() {}
