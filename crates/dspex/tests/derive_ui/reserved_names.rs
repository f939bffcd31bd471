use dspex::Signature;

#[derive(Signature)]
struct Bad {
    #[input]
    json: String,
    #[input]
    class: String,
    #[output]
    _hidden: String,
}

fn main() {}
