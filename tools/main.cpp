// STUB, replaced by the CLI work (issue 2).
#include <cstdio>
int main() { std::puts("flashlane: not implemented yet"); return 1; }
