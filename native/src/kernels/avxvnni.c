/* The AVX-VNNI kernel (Intel Core 12th gen and later, AMD Zen 5): the AVX2 kernel's source again, built with
 * -mavxvnni, its byte dot products one VEX vpdpbusd each (avx2.c: dot_into). */
#define TRIT_AVXVNNI 1
#include "avx2.c"
