// The migrations are embedded by `sqlx::migrate!` at compile time; without
// this, cargo would not rebuild the crate when only a migration file is
// added or changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
