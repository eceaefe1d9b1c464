// The soak test: see the Makefile target soak.
int main() { return 0; }
