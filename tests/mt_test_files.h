/* tests/mt_test_files.h — small file helpers the dataset tests share (POSIX: include after
 * <dirent.h>, <stdio.h>, <stdlib.h>, <string.h> and <unistd.h>). */
#ifndef MT_TEST_FILES_H
#define MT_TEST_FILES_H

/* Write n bytes to a new file at path; 1 on success. */
static inline int write_bytes(const char *path, const void *data, size_t n) {
    unlink(path); /* a new file: ext4 flushes files truncated and rewritten in place on close */
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    if (n && fwrite(data, 1, n, f) != n) { fclose(f); return 0; }
    return fclose(f) == 0;
}

/* Read a whole file into *out (malloc'ed, 16 bytes of slack past the end); its size, 0 if absent. */
static inline size_t read_bytes(const char *path, unsigned char **out) {
    FILE *f = fopen(path, "rb");
    long n;
    *out = NULL;
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = (unsigned char *)malloc((size_t)n + 16);
    if (n > 0 && fread(*out, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    return (size_t)n;
}

/* Entries of directory `dir` whose name contains `needle` ("" : every entry but . and ..); -1 if unreadable. */
static inline int count_files_in(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, needle)) n++;
    closedir(d);
    return n;
}

/* Remove a directory and the files in it (one level). */
static inline void rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    if (!d) return;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}
#endif
