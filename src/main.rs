fn main() {
    println!("filesession: the server arrives with issue 3");
}
