/* Ternary weight formats: the checkpoint's 2-bit packing (TQ2) and the derived 1.6-bit one (T5), see trit.h. */
#include "trit_internal.h"

int64_t trit_t5_size(int rows, int cols) {
    if (rows <= 0 || cols <= 0) return trit_fail(TRIT_E_INVALID, "t5: sizes must be positive");
    return (int64_t)trit_t5_groups(rows) * cols;
}

static int tq2_code(const uint8_t *tq2, int rows, int cols, int r, int c) {
    int quarter = rows / 4;
    return (tq2[(size_t)(r % quarter) * cols + c] >> (2 * (r / quarter))) & 3;
}

int trit_convert_tq2_to_t5(uint8_t *t5, const uint8_t *tq2, int rows, int cols) {
    if (rows <= 0 || rows % 4 || cols <= 0 || rows > INT32_MAX - 4)
        return trit_fail(TRIT_E_INVALID, "t5: rows must be a positive multiple of 4 below 2^31 - 4");
    int groups = trit_t5_groups(rows);
    for (int g = 0; g < groups; g++)
        for (int c = 0; c < cols; c++) {
            int byte = 0;
            for (int j = 4; j >= 0; j--) {
                int r = g + j * groups, code = r < rows ? tq2_code(tq2, rows, cols, r, c) : 1; /* padding: w = 0 */
                if (code == 3)
                    return trit_fail(TRIT_E_INVALID, "t5: invalid ternary code 3 at row %d, column %d", r, c);
                byte = byte * 3 + code;
            }
            t5[(size_t)g * cols + c] = (uint8_t)byte;
        }
    return TRIT_OK;
}

/* The validators the loader runs over a file's bytes before any kernel reads them: the first bad offset, or -1. */
int64_t trit_find_invalid_code(const uint8_t *packed, int64_t n_bytes) {
    /* a 2-bit field holds 3 when both of its bits are set */
    for (int64_t i = 0; i < n_bytes; i++)
        if (packed[i] & (packed[i] >> 1) & 0x55) return i;
    return -1;
}

int64_t trit_find_invalid_t5(const uint8_t *t5, int64_t n_bytes) {
    for (int64_t i = 0; i < n_bytes; i++)
        if (t5[i] > 242) return i;
    return -1;
}
