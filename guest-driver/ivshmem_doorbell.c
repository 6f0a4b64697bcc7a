// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem_doorbell: interrupts of QEMU's ivshmem-doorbell device for user
 * space.
 *
 * Binds PCI 1af4:1110 devices that have MSI-X (ivshmem-doorbell; the plain
 * variant has none and is left alone), turns on bus mastering (without it
 * QEMU drops the device's MSI writes), allocates every MSI-X vector and
 * offers one character device per PCI device, /dev/ivshmemN, which appears
 * under the PCI device in sysfs (/sys/bus/pci/devices/ADDR/misc/ivshmemN):
 *
 *  - read(4 bytes): blocks until an interrupt (any vector) came since this
 *    file last read, then returns the total interrupt count as a native
 *    u32 (UIO style). O_NONBLOCK gives -EAGAIN instead of blocking.
 *  - poll: readable when the count moved since this file last read.
 *  - mmap (shared) at offset N * PAGE_SIZE maps BAR N (0: registers, 2:
 *    shared memory), uncached.
 *
 * Once the device is removed (hot-unplug, unbind, rmmod) read and poll
 * report -ENODEV / POLLERR | POLLHUP, mappings are torn down (a later
 * access gets SIGBUS), and the files stay valid until closed. The driver sets no policy: it counts
 * interrupts, it never rings anyone and never touches the shared memory.
 * It does not claim the BARs, so sysfs resourceN mappings keep working.
 */

#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/wait.h>

#define DRV_NAME "ivshmem_doorbell"
#define IVSHMEM_VENDOR 0x1af4
#define IVSHMEM_DEVICE 0x1110
#define IVSHMEM_MAX_VECTORS 64

static DEFINE_IDA(ivdb_ida);

struct ivdb_dev {
	struct kref ref;
	struct pci_dev *pdev;	/* NULL once removed */
	struct miscdevice misc;
	char name[24];
	int index;
	int nvec;
	atomic_t count;		/* interrupts so far, all vectors */
	wait_queue_head_t wait;
	bool gone;
	struct mutex lock;	/* guards pdev, gone, files */
	struct list_head files;
	resource_size_t bar_start[3];
	resource_size_t bar_len[3];
};

struct ivdb_file {
	struct ivdb_dev *dev;
	struct list_head node;
	struct address_space *mapping;
	u32 seen;
};

static void ivdb_release_dev(struct kref *ref)
{
	struct ivdb_dev *dev = container_of(ref, struct ivdb_dev, ref);

	ida_free(&ivdb_ida, dev->index);
	kfree(dev);
}

static irqreturn_t ivdb_irq(int irq, void *data)
{
	struct ivdb_dev *dev = data;

	atomic_inc(&dev->count);
	wake_up_interruptible(&dev->wait);
	return IRQ_HANDLED;
}

static int ivdb_open(struct inode *inode, struct file *file)
{
	struct miscdevice *misc = file->private_data;
	struct ivdb_dev *dev = container_of(misc, struct ivdb_dev, misc);
	struct ivdb_file *f;

	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	mutex_lock(&dev->lock);
	if (dev->gone) {
		mutex_unlock(&dev->lock);
		kfree(f);
		return -ENODEV;
	}
	kref_get(&dev->ref);
	f->dev = dev;
	f->mapping = file->f_mapping;
	f->seen = atomic_read(&dev->count);
	list_add(&f->node, &dev->files);
	mutex_unlock(&dev->lock);
	file->private_data = f;
	return 0;
}

static int ivdb_release(struct inode *inode, struct file *file)
{
	struct ivdb_file *f = file->private_data;
	struct ivdb_dev *dev = f->dev;

	mutex_lock(&dev->lock);
	list_del(&f->node);
	mutex_unlock(&dev->lock);
	kfree(f);
	kref_put(&dev->ref, ivdb_release_dev);
	return 0;
}

static ssize_t ivdb_read(struct file *file, char __user *buf, size_t len,
			 loff_t *ppos)
{
	struct ivdb_file *f = file->private_data;
	struct ivdb_dev *dev = f->dev;
	u32 now;
	int ret;

	if (len != sizeof(u32))
		return -EINVAL;
	for (;;) {
		if (READ_ONCE(dev->gone))
			return -ENODEV;
		now = atomic_read(&dev->count);
		if (now != f->seen)
			break;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(dev->wait,
				READ_ONCE(dev->gone) ||
				atomic_read(&dev->count) != f->seen);
		if (ret)
			return ret;
	}
	if (copy_to_user(buf, &now, sizeof(now)))
		return -EFAULT;
	f->seen = now;
	return sizeof(now);
}

static __poll_t ivdb_poll(struct file *file, poll_table *wait)
{
	struct ivdb_file *f = file->private_data;
	struct ivdb_dev *dev = f->dev;

	poll_wait(file, &dev->wait, wait);
	if (READ_ONCE(dev->gone))
		return EPOLLERR | EPOLLHUP;
	if (atomic_read(&dev->count) != f->seen)
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

/*
 * BAR pages are inserted on fault, under the device lock: after removal a
 * fault gets SIGBUS, and the pages already in place are zapped by
 * ivdb_remove. (Mapping eagerly at mmap time would leave a window where a
 * mapping made just before removal is not yet linked to be zapped.)
 */
static vm_fault_t ivdb_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ivdb_file *f = vma->vm_private_data;
	struct ivdb_dev *dev = f->dev;
	unsigned long bar = vma->vm_pgoff;
	unsigned long page = vmf->pgoff - vma->vm_pgoff;
	vm_fault_t ret;

	mutex_lock(&dev->lock);
	if (dev->gone || page >= PAGE_ALIGN(dev->bar_len[bar]) >> PAGE_SHIFT)
		ret = VM_FAULT_SIGBUS;
	else
		ret = vmf_insert_pfn(vma, vmf->address,
				     (dev->bar_start[bar] >> PAGE_SHIFT) + page);
	mutex_unlock(&dev->lock);
	return ret;
}

static const struct vm_operations_struct ivdb_vm_ops = {
	.fault = ivdb_fault,
};

static int ivdb_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct ivdb_file *f = file->private_data;
	struct ivdb_dev *dev = f->dev;
	unsigned long bar = vma->vm_pgoff;
	unsigned long size = vma->vm_end - vma->vm_start;
	int ret = 0;

	if (bar != 0 && bar != 2)
		return -EINVAL;
	/* Device memory is shared, never copied on write. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	mutex_lock(&dev->lock);
	if (dev->gone)
		ret = -ENODEV;
	else if (dev->bar_len[bar] == 0 ||
		 size > PAGE_ALIGN(dev->bar_len[bar]) ||
		 !PAGE_ALIGNED(dev->bar_start[bar]))
		ret = -EINVAL;
	mutex_unlock(&dev->lock);
	if (ret)
		return ret;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
#endif
	vma->vm_page_prot = pgprot_noncached(vma->vm_page_prot);
	vma->vm_private_data = f;
	vma->vm_ops = &ivdb_vm_ops;
	return 0;
}

static const struct file_operations ivdb_fops = {
	.owner = THIS_MODULE,
	.open = ivdb_open,
	.release = ivdb_release,
	.read = ivdb_read,
	.poll = ivdb_poll,
	.mmap = ivdb_mmap,
	.llseek = noop_llseek,
};

static int ivdb_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ivdb_dev *dev;
	int ret, i, nvec;

	/* ivshmem-plain has no MSI-X: nothing to offer, leave it alone. */
	if (!pdev->msix_cap)
		return -ENODEV;
	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	/* QEMU sends MSI through the bus-master address space. */
	pci_set_master(pdev);
	nvec = pci_msix_vec_count(pdev);
	if (nvec <= 0)
		return -ENODEV;
	nvec = min(nvec, IVSHMEM_MAX_VECTORS);
	nvec = pci_alloc_irq_vectors(pdev, 1, nvec, PCI_IRQ_MSIX);
	if (nvec < 0)
		return nvec;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev) {
		ret = -ENOMEM;
		goto free_vectors;
	}
	kref_init(&dev->ref);
	mutex_init(&dev->lock);
	INIT_LIST_HEAD(&dev->files);
	init_waitqueue_head(&dev->wait);
	dev->pdev = pdev;
	dev->nvec = nvec;
	for (i = 0; i < 3; i++) {
		if (pci_resource_flags(pdev, i) & IORESOURCE_MEM) {
			dev->bar_start[i] = pci_resource_start(pdev, i);
			dev->bar_len[i] = pci_resource_len(pdev, i);
		}
	}
	ret = ida_alloc(&ivdb_ida, GFP_KERNEL);
	if (ret < 0) {
		kfree(dev);
		goto free_vectors;
	}
	dev->index = ret;
	for (i = 0; i < nvec; i++) {
		ret = request_irq(pci_irq_vector(pdev, i), ivdb_irq, 0,
				  DRV_NAME, dev);
		if (ret)
			goto free_irqs;
	}
	snprintf(dev->name, sizeof(dev->name), "ivshmem%d", dev->index);
	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &ivdb_fops;
	dev->misc.parent = &pdev->dev;
	dev->misc.mode = 0600;
	ret = misc_register(&dev->misc);
	if (ret)
		goto free_irqs;
	pci_set_drvdata(pdev, dev);
	dev_info(&pdev->dev, "%s: %d MSI-X vector(s)\n", dev->name, nvec);
	return 0;

free_irqs:
	while (--i >= 0)
		free_irq(pci_irq_vector(pdev, i), dev);
	kref_put(&dev->ref, ivdb_release_dev);
free_vectors:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void ivdb_remove(struct pci_dev *pdev)
{
	struct ivdb_dev *dev = pci_get_drvdata(pdev);
	struct ivdb_file *f;
	int i;

	misc_deregister(&dev->misc);
	for (i = 0; i < dev->nvec; i++)
		free_irq(pci_irq_vector(pdev, i), dev);
	pci_free_irq_vectors(pdev);
	mutex_lock(&dev->lock);
	WRITE_ONCE(dev->gone, true);
	dev->pdev = NULL;
	/* The BARs go away with the device: so do user mappings of them. */
	list_for_each_entry(f, &dev->files, node)
		unmap_mapping_range(f->mapping, 0, 0, 1);
	mutex_unlock(&dev->lock);
	wake_up_interruptible_all(&dev->wait);
	pci_set_drvdata(pdev, NULL);
	dev_info(&pdev->dev, "%s removed\n", dev->name);
	kref_put(&dev->ref, ivdb_release_dev);
}

static const struct pci_device_id ivdb_ids[] = {
	{ PCI_DEVICE(IVSHMEM_VENDOR, IVSHMEM_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, ivdb_ids);

static struct pci_driver ivdb_driver = {
	.name = DRV_NAME,
	.id_table = ivdb_ids,
	.probe = ivdb_probe,
	.remove = ivdb_remove,
};
module_pci_driver(ivdb_driver);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("ivchan developers");
MODULE_DESCRIPTION("ivshmem-doorbell MSI-X interrupts for user space (UIO-style read/poll)");
