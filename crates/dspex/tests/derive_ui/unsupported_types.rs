use dspex::Signature;

#[derive(Signature)]
struct Bad {
    #[input]
    pair: (String, i32),
    #[input]
    fixed: [f32; 3],
    #[output]
    answer: String,
}

fn main() {}
