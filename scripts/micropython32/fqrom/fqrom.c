// fqrom: map a ROMFS image file into a standalone MicroPython Unix build, read-only.
//
//     import vfs, fqrom
//     vfs.mount(vfs.VfsRom(fqrom.map("fw.romfs")), "/rom")
//
// On an ESP32 or a Pico W the ROMFS partition is memory-mapped flash: .mpy files imported from
// /rom execute in place and their bytecode takes no heap. The 64-bit host board gets the same
// from tools/romfs_launch.py (CPython mmaps the image and hands its address to the in-process VM
// through uctypes.bytearray_at). A standalone binary without ffi has no way to map a file, so
// scripts/build-micropython32.sh links this module in: map() mmaps the file PROT_READ and
// returns a bytearray over that memory (as uctypes.bytearray_at does), which vfs.VfsRom reads.
// The mapping lasts until the process exits. The only heap it takes is the bytearray object.

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "py/runtime.h"
#include "py/mperrno.h"

static mp_obj_t fqrom_map(mp_obj_t path_in) {
    const char *path = mp_obj_str_get_str(path_in);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        mp_raise_OSError(errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        mp_raise_OSError(err);
    }
    if (st.st_size == 0) {
        close(fd);
        mp_raise_OSError(MP_EINVAL);
    }
    void *addr = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (addr == MAP_FAILED) {
        mp_raise_OSError(err);
    }
    return mp_obj_new_bytearray_by_ref(st.st_size, addr);
}
static MP_DEFINE_CONST_FUN_OBJ_1(fqrom_map_obj, fqrom_map);

static const mp_rom_map_elem_t fqrom_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_fqrom) },
    { MP_ROM_QSTR(MP_QSTR_map), MP_ROM_PTR(&fqrom_map_obj) },
};
static MP_DEFINE_CONST_DICT(fqrom_globals, fqrom_globals_table);

const mp_obj_module_t fqrom_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&fqrom_globals,
};

MP_REGISTER_MODULE(MP_QSTR_fqrom, fqrom_module);
