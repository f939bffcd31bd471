use dspex::Signature;

#[derive(Signature)]
struct Unmarked {
    #[input]
    question: String,
    answer: String,
}

#[derive(Signature)]
struct Both {
    #[input]
    #[output]
    question: String,
}

#[derive(Signature)]
struct NoOutput {
    #[input]
    question: String,
}

#[derive(Signature)]
struct Options {
    #[input(kind = "certainty")]
    question: String,
    #[output(colour = "red")]
    answer: String,
    #[output(literal = "a||b")]
    label: String,
}

#[derive(Signature)]
struct Twice {
    #[input(name = "text")]
    question: String,
    #[output(name = "text")]
    answer: String,
}

#[derive(Signature)]
struct Tuple(#[input] String);

fn main() {}
